"""cxr: the library behind the cxr-pipeline DVC stages.

All logic lives here; ``stages/*.py`` are thin command-line wrappers. Importing this package has
no side effects (no dataset building, no downloads, no global seeding).
"""

__version__ = "0.1.0"
