# shellcheck shell=bash
# capture.sh: redsocks inside the drone's namespace (chain.capture: namespace).
# PLACEHOLDER until the namespace capture is built (issue 12).
