"""TorchServe's log4j2 settings as zoo runs it: one line per request, not twenty.

TorchServe's built-in log4j2.xml logs the frontend at DEBUG into ts_log.log and, through the root
logger, into ts_log.log again and the console, plus a line per metric per request: about 22 log
lines for every prediction. Measured with benchmarks/serve_load.py on 2 cores, the Java frontend
spent 2.7-5.3 ms of CPU per request, as much as int8 inference itself. Here the frontend logs at
INFO (lifecycle, warnings, errors) once, per-request chatter (job ids, response times, the
worker's metric lines) only at WARN, and metrics go to the metrics endpoint (metrics_mode=prometheus
in config.properties) instead of log files. The access log keeps its one line per request, and
model_log.log keeps every line the handlers log. Files roll over at 100 MB, five kept.
"""
from __future__ import annotations

from pathlib import Path

LOG_CONFIG_FILE = "log4j2.xml"


def _rolling(name: str, pattern: str) -> str:
    return (f'    <RollingFile name="{name}" fileName="${{env:LOG_LOCATION:-logs}}/{name}.log" '
            f'filePattern="${{env:LOG_LOCATION:-logs}}/{name}.%d{{dd-MMM}}.log.gz">\n'
            f'      <PatternLayout pattern="{pattern}"/>\n'
            '      <Policies><SizeBasedTriggeringPolicy size="100 MB"/><TimeBasedTriggeringPolicy/></Policies>\n'
            '      <DefaultRolloverStrategy max="5"/>\n'
            '    </RollingFile>\n')


def _logger(name: str, level: str, appender: str | None = None) -> str:
    if appender is None:
        return f'    <Logger name="{name}" level="{level}"/>\n'
    return (f'    <Logger name="{name}" level="{level}" additivity="false">'
            f'<AppenderRef ref="{appender}"/></Logger>\n')


def log4j2_xml() -> str:
    detailed = "%d{ISO8601} [%-5p] %t %c - %m%n"
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Configuration>\n  <Appenders>\n'
            + _rolling("access_log", "%d{ISO8601} - %m%n") + _rolling("model_log", detailed)
            + _rolling("ts_log", detailed)
            + f'    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="{detailed}"/></Console>\n'
            '  </Appenders>\n  <Loggers>\n'
            + _logger("ACCESS_LOG", "info", "access_log")
            + _logger("MODEL_LOG", "info", "model_log")
            + _logger("MODEL_METRICS", "off") + _logger("TS_METRICS", "off")
            + _logger("org.pytorch.serve", "info", "ts_log")
            # per request: "Sending response for jobId", "Backend response time", "Waiting time ns", metric lines
            + "".join(_logger(f"org.pytorch.serve.{n}", "warn") for n in (
                "wlm.BatchAggregator", "wlm.WorkerThread", "wlm.WorkerLifeCycle", "job.RestJob"))
            + _logger("io.netty", "error") + _logger("org.apache", "off")
            + '    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>\n  </Loggers>\n</Configuration>\n')


def write_log_config(state_dir: Path) -> Path:
    path = Path(state_dir) / LOG_CONFIG_FILE
    path.write_text(log4j2_xml())
    return path
