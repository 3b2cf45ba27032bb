from slmforge.cli.main import main

main()
