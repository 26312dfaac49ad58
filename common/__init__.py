"""Small pieces shared by every package: the user-facing error, atomic file output, device set-up."""
from revnet.common.errors import UserError

__all__ = ["UserError"]
