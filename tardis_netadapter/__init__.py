"""tardis-netadapter: HTCondor drones on network-restricted HPC sites via COBalD/TARDIS."""

__version__ = "0.1.0"
