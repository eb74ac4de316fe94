"""The interactive demo: `python -m persam.demo` (or `persam-demo`), a Gradio page.

`core` holds the logic as plain functions (inputs -> method -> panels), `app` the page, and
`__main__` the Hydra entry point (conf/demo.yaml).
"""
