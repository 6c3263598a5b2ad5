"""Small helpers every part of the plugin shares."""
from typing import List


def split_list(value) -> List[str]:
    """A comma-separated option (``--langs en,de``, ``--objectives xmlm,vlm``) as a list; empty -> []."""
    return [x.strip() for x in (value or "").split(",") if x.strip()]
