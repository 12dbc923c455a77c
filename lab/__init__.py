"""The lab: a segment of network namespaces with real servers, clients and members.

Apart from the product: a production host never imports it. The demo, the
end-to-end tests and the benchmarks use it. It is its own distribution
(`pip install ./lab`, which `tools/setup` does), so `pip install .` installs
no lab code and none of its dependencies.

- `namespaces`: the segment itself (switch, members, clients) and its teardown.
- `members`: nginx, dnsmasq and the appliance started inside a member.
- `loadgen`: the demo's HTTP and DNS clients, run inside a client namespace.
- `demo`: `appliance-ctl demo`.
- `python -m lab`: the lab from the command line.
"""
