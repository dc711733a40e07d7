from sensor.cli import run

run()
