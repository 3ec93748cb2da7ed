"""SHA-256 of file contents, read in 1 MB blocks."""
import hashlib


def sha256_of_files(paths):
    """Hex SHA-256 of the contents of `paths`, read one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
