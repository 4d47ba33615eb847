"""sdt-ray: emotion recognition in conversations with SDT, on Ray.

Nothing here imports Ray or touches storage; see the modules for each concern.
"""

__version__ = "0.1.0"
