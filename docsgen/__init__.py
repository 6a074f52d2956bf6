"""Build-time helpers of the documentation site (``mkdocs.yml``): the MkDocs hook that fills the generated reference
pages, and the parser of the pages' code blocks that the tests use to run every command marked runnable."""
