"""Datasets for persam: PerSeg-layout folders and the procedural synthetic world."""
