"""What the entry points (`persam.run`, `persam.video`, `persam.report`, `persam.train`,
`persam.demo`) share: the config schemas (`schema`) and the run-folder checks (`preflight`)."""
