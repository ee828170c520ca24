"""Hook glue: written by the lead."""
