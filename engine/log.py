import logging

log = logging.getLogger("deepytorch")


def info(msg, *args):
    log.info("DeepyTorch: " + msg, *args)


def warning(msg, *args):
    log.warning("DeepyTorch: " + msg, *args)


def error(msg, *args):
    log.error("DeepyTorch: " + msg, *args)
