"""The Faust runtime: the app, its topics, tables and agents around the stages, the offset guard,
the worker's web endpoint and the `tally worker` command. The only package that imports Faust."""
