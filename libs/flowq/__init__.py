"""flowq: shared libraries of the flowq services (settings, logging, lifecycle, SQL, streams, REST, client, CLI)."""
