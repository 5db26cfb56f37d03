"""The demo (``make demo``): nvidia-mig-manager.service under a private
systemd user manager, on a simulated 8xA100-SXM4-40GB node. See docs/demo.md.

* :mod:`demo.usermanager` starts and stops the user manager;
* :mod:`demo.node` builds the throwaway node root and its units;
* :mod:`demo.steps` is the walk-through.
"""
