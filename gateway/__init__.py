"""Cellgate: data-acquisition gateway for battery cell plants (OPC UA / Modbus -> MQTT)."""

__version__ = "0.1.0"
