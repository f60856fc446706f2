"""What the CLI shows: every rich table, progress display and entropy trace, and the matplotlib
figures. The core never imports this package; the CLI hands it results."""
