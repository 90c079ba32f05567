"""One module per `retryopt` subcommand; each keeps heavy imports inside its function."""
