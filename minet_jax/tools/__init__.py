"""Command-line tools and measurements built on the library (the library never imports them)."""
