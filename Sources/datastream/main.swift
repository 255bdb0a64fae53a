print("datastream")
