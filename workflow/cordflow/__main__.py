from cordflow.cli import app

app(prog_name="cordflow")
