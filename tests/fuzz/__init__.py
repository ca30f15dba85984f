"""Fuzz targets for Weft's parsers of hostile input, their seed corpora, and the crashes found."""
