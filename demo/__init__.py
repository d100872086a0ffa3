"""Gradio demo: see the segmentation and demo issue."""
