"""`chorus` is a namespace package over three source roots; map each subpackage to its root."""

from setuptools import find_namespace_packages, setup

ROOTS = ("proto", "client", "server")
package_dir = {
    pkg: f"{root}/{pkg.replace('.', '/')}"
    for root in ROOTS
    for pkg in find_namespace_packages(root, include=["chorus.*"])
}
setup(packages=sorted(package_dir), package_dir=package_dir)
