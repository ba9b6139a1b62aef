import sys

from raytune_st.cli import main

sys.exit(main())
