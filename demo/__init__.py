"""The Gradio demo (``midi3d demo``): upload, segment, edit instances, generate, view, download.

:mod:`.session` holds the logic (checks, edits, generation, outputs); :mod:`.app` the page.
"""
