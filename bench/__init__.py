"""`make bench`: gslb-edge measured against gdnsd and nginx in the same run (see docs/bench.md)."""
