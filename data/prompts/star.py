# Question: Which object was thrown by the person?
# Possible answers: (A) The clothes. (B) The pillow. (C) The bag. (D) The box.
def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_act(video_clip, "person is throwing something")
    objs = Query_Objs(clip, "clothes/pillow/bag/box")
    info = {"objects thrown": objs}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: What did the person do with the cup after putting down the book?
# Possible answers: (A) Took. (B) Put down. (C) Washed. (D) Threw.
def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_act(video_clip, "person is putting down the book")
    after = trim(video_clip, start=clip.end_frame)
    after = Filter_frames_with_obj(after, "cup")
    acts = Query_Actions(after, "cup", possible_answers)
    info = {"actions with the cup after putting down the book": acts}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: What will the person do next?
# Possible answers: (A) Open the door. (B) Sit on the sofa. (C) Take the phone. (D) Close the laptop.
def execute_command(video_clip, query, possible_answers):
    last = trim(video_clip, start=video_clip.end_frame - 8)
    acts = Query_Actions(last, "person", possible_answers)
    summary = Video_summary(last)
    info = {"latest actions": acts, "summary": summary}
    answer = select_answer(query, possible_answers, info)
    return answer

# Question: Which object is the person able to take after holding the food?
# Possible answers: (A) The towel. (B) The laptop. (C) The sandwich. (D) The shoe.
def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_act(video_clip, "person is holding the food")
    after = trim(video_clip, start=clip.end_frame)
    present = [obj for obj in possible_answers if exist(after, obj)]
    found = [Find(after, obj) for obj in present]
    info = {"objects present after holding the food": present, "where they are": found}
    answer = select_answer(query, possible_answers, info)
    return answer
