"""What a ``dvamn`` command's console may not show: lines that Ray itself writes."""

import re

# Ray's loggers' format, its workers' and raylets' forwarded output, its C++ core's log
# lines, Ray Data's progress bars and messages, Ray Train's messages.
RAY_INTERNAL = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s|^\[\d{4}-\d\d-\d\d |\((?:raylet|pid=|\w+ pid=)"
    r"|core_worker|streaming_executor|Ray Train Controller|ray\._private|RAY_AUTH_MODE|Downloading: "
    r"|Running Dataset|Dataset \S+ execution|MapBatches\(|ReadFiles|Execution plan"
)


def ray_internal_lines(console_text: str) -> list:
    return [line for line in console_text.splitlines() if RAY_INTERNAL.search(line)]
