"""Make the repository importable as ansible_collections.obsctl.observability.

Under ``ansible-test units`` the collection already sits at
.../ansible_collections/obsctl/observability and nothing is done. Under a plain
``pytest tests/unit/plugins`` a temporary directory gets a symlink
ansible_collections/obsctl/observability -> the repository root.
"""

import os
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _ensure_collection_path():
    try:
        import ansible_collections.obsctl.observability.plugins.module_utils._obsctl  # noqa: F401
        return
    except ImportError:
        pass
    base = tempfile.mkdtemp(prefix="obsctl-collection-")
    os.makedirs(os.path.join(base, "ansible_collections", "obsctl"))
    os.symlink(_ROOT, os.path.join(base, "ansible_collections", "obsctl", "observability"))
    sys.path.insert(0, base)
    for name in list(sys.modules):
        if name == "ansible_collections" or name.startswith("ansible_collections."):
            del sys.modules[name]


_ensure_collection_path()
