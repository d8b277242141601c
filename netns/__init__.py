"""The lab: the whole edge network in Linux network namespaces on one machine.

Owns namespaces, the bridge, veth links, addresses and sysctls (with pyroute2),
the processes it starts inside lab hosts (tracked by pid), and the lab's state
directory. It starts the other components only through the `gslb` command line
(`gslb dns`, `gslb geo build-mmdb`) and never imports dns/, geo/ or edge/.

It must never change the root network namespace: no link, address, route or
firewall rule there, and no lab traffic starts there.
"""
