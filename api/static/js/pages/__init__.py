"""Console assets (not Python): a package only so setuptools ships these files as package data."""
