"""The one exception type for mistakes a user can make; the script prints it as one line."""


class UserError(Exception):
    """A problem with the user's arguments, files or configs, said in words they can act on."""
