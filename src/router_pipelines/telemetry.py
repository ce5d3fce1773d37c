"""No telemetry from any entry point of the project: the switches, set before the libraries read them.

Three libraries in the stack would phone home on their own:

* **MLflow** builds its telemetry client when ``mlflow`` is first imported
  (``mlflow/__init__.py`` calls ``mlflow.telemetry.set_telemetry_client()``), and the client
  fetches its configuration from ``config.mlflow-telemetry.io`` in a background thread at once.
  The switch, ``MLFLOW_DISABLE_TELEMETRY`` (or ``DO_NOT_TRACK``), is read at that moment and
  again before each event. MLflow also turns itself off when it sees ``PYTEST_CURRENT_TEST`` or
  a CI variable, which is why the test suite never saw the lookup.
* **huggingface_hub** reads ``HF_HUB_DISABLE_TELEMETRY`` (or ``DO_NOT_TRACK``) once, when
  ``huggingface_hub.constants`` is imported.
* **Kedro-Viz** asks the package index for its latest version when ``kedro viz run`` starts and
  on every ``/api/version`` request (``kedro_viz.integrations.pypi.get_latest_version``); offline
  the lookup fails and the page's banner reads "Kedro-Viz None is here!". It has no switch:
  :func:`disable_viz_version_check` replaces the lookup by the installed version (nothing is
  outdated, nothing is sent). ``settings.py`` calls it, and Kedro reads the project's settings
  before any ``kedro viz`` command runs (the server process inherits the patch).
* **kedro-telemetry** is also refused by the ``.telemetry`` file (``consent: false``) and by
  ``DISABLE_HOOKS_FOR_PLUGINS`` in ``settings.py``; ``KEDRO_DISABLE_TELEMETRY`` covers the
  ``kedro`` commands that run before the project's settings are read.

So :func:`disable_telemetry` must run before anything imports mlflow: at the top of
``settings.py`` (``kedro run`` and ``bootstrap_project`` execute it before kedro-mlflow's CLI
plugin imports mlflow), in ``router_pipelines.launch`` and ``python -m router_pipelines``; the
Makefile exports the same variables. A switch the user has set explicitly is left as it is.
"""

from __future__ import annotations

import os
import sys

# variable -> value that turns the library's telemetry off
TELEMETRY_SWITCHES: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",  # the cross-tool switch (MLflow and huggingface_hub read it too)
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "KEDRO_DISABLE_TELEMETRY": "1",
}
_TRUE = ("1", "true", "yes", "on")  # what huggingface_hub counts as set


def disable_telemetry() -> None:
    """Set every switch in :data:`TELEMETRY_SWITCHES` that the environment does not set yet.

    When mlflow or huggingface_hub were imported already, their telemetry state is reset from
    the switches too (MLflow's client is dropped; a configuration request it started at import
    may already be on its way, hence "call this first").
    """
    for name, value in TELEMETRY_SWITCHES.items():
        os.environ.setdefault(name, value)
    if "mlflow.telemetry" in sys.modules:
        from mlflow.telemetry import set_telemetry_client

        set_telemetry_client()  # re-reads the switch: no client when telemetry is off
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None and os.environ["HF_HUB_DISABLE_TELEMETRY"].lower() in _TRUE:
        hub_constants.HF_HUB_DISABLE_TELEMETRY = True


def disable_viz_version_check() -> bool:
    """Make Kedro-Viz report the installed version as the latest, without asking the network.

    Patches ``get_latest_version`` in ``kedro_viz.integrations.pypi`` and in the ``/api/version``
    response module, if that one was imported already (it binds the name at import).

    Returns:
        Whether Kedro-Viz is installed (and so was patched).
    """
    try:
        from kedro_viz import __version__
        from kedro_viz.integrations import pypi
    except ImportError:
        return False
    from packaging.version import parse

    def installed_version() -> object:
        return parse(__version__)

    installed_version.__doc__ = "The installed Kedro-Viz version (router_pipelines: no lookup)."
    pypi.get_latest_version = installed_version
    response = sys.modules.get("kedro_viz.api.rest.responses.version")
    if response is not None:
        response.get_latest_version = installed_version
    return True
