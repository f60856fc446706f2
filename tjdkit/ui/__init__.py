"""Rich renderers for the CLI. The core never imports this package."""
