"""The lab: real hosts on this machine for the tests, the demo and the benchmarks.

Test and demo infrastructure, kept beside the `remediations` package and out of its wheel; no
product module imports it. `lab.hosts` builds and repairs the hosts and holds the helpers tests
use (exec_on, clients, faults); `python -m lab up|down|status` is its command line and
`inv -r lab up|down|status` the same as Invoke tasks (lab/tasks.py).
"""
