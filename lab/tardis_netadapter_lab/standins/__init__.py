"""Stand-ins for programs the lab cannot install: HTCondor, CVMFS, apptainer.

Each module here is a self-contained, stdlib-only script run by the system
Python (`/usr/bin/python3 FILE ...`); none imports another. See docs/standins.md.
"""
