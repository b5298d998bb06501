"""The generated docs: one module per page, rendered from the code, written where the caller says.

Pages: ``reference`` (registries and config keys), ``foundations`` (activation and init tables),
``doctor`` (runs the doctor's planted-fault suite, about 15 s), ``labs`` (runs every lab: minutes
on a few cores; every run of it differs in the times it records).
The one entry point is ``python -m trainwell.docs`` (:mod:`trainwell.docs.__main__`); it writes into
``--out DIR`` (default ``docs`` under the current folder). Nothing here finds a folder from the
package's own location: installed, the package is not beside the repository.
"""
