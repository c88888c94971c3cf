"""fedseg's benchmark suite (``python -m bench``); not part of the installed package."""
