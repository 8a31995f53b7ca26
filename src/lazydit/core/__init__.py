"""The core tier: the models, the noise schedule and samplers, and lazy sampling itself. It imports
nothing from the rest of lazydit but `lazydit.io` and `lazydit.data` (see docs/architecture.md)."""
