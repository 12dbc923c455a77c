"""Wire formats. Each module pairs a construct declaration (the specification,
which both parses and builds) with a small frozen dataclass that the rest of
the code sees, offering `parse(data)` and `build()`.

Derived fields (lengths, header lengths, checksums) are not part of the
dataclasses: `build()` computes them and `parse()` verifies them.
"""
