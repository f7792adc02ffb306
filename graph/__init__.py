"""Sesame's engine: request schema, validation, templating, scheduling, execution on Ray.

Nothing here imports `nodes/` or `serve_app.py`: node kinds reach the engine through the
protocol in `graph.kinds` and a registry handed in by the caller.
"""
