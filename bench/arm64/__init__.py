"""arm64 runs: the benchmark suite on an emulated Raspberry Pi class machine (vm, image).

The shell scripts beside this package are the entry points: run-vm.sh (this host, emulated)
and run-hardware.sh (a real Pi); both run suite.sh, the one list of benchmarks.
"""
