"""The Click scheduler: sweep spec -> jobs expansion, submission, local workers, queries and
reports."""
