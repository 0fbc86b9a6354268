"""The analyst's side: named KPI definitions (`kpis`), and `tally query` / `tally report` (`query`)."""
