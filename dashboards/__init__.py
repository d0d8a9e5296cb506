"""Streamlit dashboards of relmon (run with ``relmon dashboard``)."""
