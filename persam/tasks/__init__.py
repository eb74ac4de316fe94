"""The runner (`runner`) and one task per kind of unit: `objects` (PerSeg-layout objects),
`episodes` (few-shot episodes), `video` (DAVIS-layout sequences)."""
