"""A module that fails to import (a pipeline file naming it must say so, not crash)."""

raise RuntimeError("this module cannot be imported")
