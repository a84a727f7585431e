"""Encrypted backups (docs/backups.md): the file's format (`archive`), the recovery key (`keys`), what a
backup holds and how it is made (`contents`), and restoring one (`restore`)."""
