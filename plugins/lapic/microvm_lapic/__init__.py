"""Local APIC set-up for microvm."""
